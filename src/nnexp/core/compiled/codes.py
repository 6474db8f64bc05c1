"""Codes the kernels dispatch on, shared by the engine that plans a network and the kernels that run it."""

DENSE, BIAS = 0, 1
IDENTITY, SIGMOID, TANH, RELU, SOFTMAX = 0, 1, 2, 3, 4
MSE, CROSS_ENTROPY = 0, 1
SGD, RMSPROP, ADAM = 0, 1, 2
#: Columns of a row of a plan's ``stages``: Dense or Bias, sizes, where its parameters start in the packed
#: arrays (-1: none), and the activation after it.
KIND, N_IN, N_OUT, WEIGHT_AT, BIAS_AT, ACTIVATION = range(6)
