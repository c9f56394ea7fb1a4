# sum.asm: 1 + 2 + ... + n (argument n >= 0), counting n down to 0.
        push 0
        store total
loop:
        load n
        jz finish           # n == 0: all added
        load total
        load n
        add
        store total
        load n
        push 1
        sub
        store n
        jmp loop
finish:
        load total
        emit
        halt
