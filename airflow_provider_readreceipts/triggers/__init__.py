"""Triggers: the deferred wait for a read receipt, and the event trigger for asset watchers."""
