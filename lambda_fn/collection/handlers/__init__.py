"""Lambda entry points of the event-driven functions; each is thin: parse the event, call the work, answer."""
