"""Serving: the online engine behind one Service protocol, on a thread or in its own process."""
