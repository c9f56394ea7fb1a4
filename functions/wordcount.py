"""wordcount: counts the words of a text kept in the lab's storage, or given inline.

{"put": "doc1", "text": "..."} stores a text; {"key": "doc1"} counts it:
-> {"words": 9, "distinct": 7, "top": [["the", 3], ...]}."""

import re
from collections import Counter


def handle(event, context):
    event = event or {}
    if "put" in event:
        context.storage.put(f"text/{event['put']}", event["text"])
        return {"stored": event["put"], "bytes": len(event["text"].encode())}
    text = event.get("text")
    if text is None:
        text = context.storage.get(f"text/{event['key']}")
        if text is None:
            raise KeyError(f"no text stored as {event['key']!r}")
    words = Counter(re.findall(r"[a-z0-9']+", text.lower()))
    return {"words": sum(words.values()), "distinct": len(words),
            "top": words.most_common(int(event.get("top", 5)))}
