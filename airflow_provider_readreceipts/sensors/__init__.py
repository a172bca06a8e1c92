"""Sensors: wait for a message to be read (:mod:`.read_receipt`)."""
