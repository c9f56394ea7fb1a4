"""counter: keeps a count in the lab's storage, since an instance keeps nothing of its
own between requests (another instance, or none, may serve the next one).

{"name": "visits"} -> {"name": "visits", "count": 3}. Not atomic: two instances at once
may both read 2 and write 3 (the storage has no compare-and-set), which is the point of
the lab's exercise on stateless functions."""


def handle(event, context):
    name = (event or {}).get("name", "default")
    key = f"counter/{name}"
    count = int(context.storage.get(key, "0")) + 1
    context.storage.put(key, str(count))
    return {"name": name, "count": count}
