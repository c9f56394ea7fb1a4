"""The Chord lab on the host: the simulator (`sim`), the ring check and drawing (`ringmap`),
and the `distlab chord` / `distlab sim chord` commands (`cli`)."""
