/dev/fd/3: line 72: nnexp: command not found
