"""fib: CPU-bound on purpose (naive recursion): {"n": 25} -> {"n": 25, "fib": 75025}.

Large n runs past the function's timeout, which is how to watch an instance replaced."""


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def handle(event, context):
    n = int((event or {}).get("n", 20))
    if not 0 <= n <= 40:
        raise ValueError(f"n is {n}; 0..40")
    return {"n": n, "fib": fib(n)}
