"""echo: answers with the event it was given, and the invocation's id."""


def handle(event, context):
    context.log(f"echo {event!r}")
    return {"event": event, "id": context.invocation_id}
