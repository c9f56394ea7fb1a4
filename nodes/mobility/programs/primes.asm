# primes.asm: how many primes are below n (argument n), by trial division.
# Long on purpose, so there is time to move it mid-run: n=5000 takes
# 776 000 steps, about 40 s at a host's default pace of 20 000 steps a second
# (n=2000: 231 000 steps, 12 s; n=1000: 93 000 steps, 5 s).
        push 0
        store count
        push 2
        store i             # the candidate
next:
        load i
        load n
        lt
        jz finish           # i >= n: all counted
        push 2
        store d             # the trial divisor
trial:
        load i
        load d
        load d
        mul
        lt
        not
        jz prime            # i < d*d: no divisor up to its square root
        load i
        load d
        mod
        jz composite        # d divides i
        load d
        push 1
        add
        store d
        jmp trial
prime:
        load count
        push 1
        add
        store count
composite:
        load i
        push 1
        add
        store i
        jmp next
finish:
        load count
        emit
        halt
