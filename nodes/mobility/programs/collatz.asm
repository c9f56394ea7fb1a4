# collatz.asm: the start below n (argument n) with the longest Collatz chain
# (x -> x/2 if even, 3x+1 if odd, down to 1); emits the start, then its length.
        push 0
        store best          # the longest chain so far, in numbers
        push 0
        store best_start
        push 1
        store start
outer:
        load start
        load n
        lt
        jz finish           # start >= n: every start tried
        load start
        store x
        push 1
        store length
chain:
        load x
        push 1
        eq
        not
        jz ended            # x == 1: the chain ends
        load x
        push 2
        mod
        jz even
        load x
        push 3
        mul
        push 1
        add
        store x
        jmp counted
even:
        load x
        push 2
        div
        store x
counted:
        load length
        push 1
        add
        store length
        jmp chain
ended:
        load best
        load length
        lt
        jz following        # not longer than the best: keep the best
        load length
        store best
        load start
        store best_start
following:
        load start
        push 1
        add
        store start
        jmp outer
finish:
        load best_start
        emit
        load best
        emit
        halt
