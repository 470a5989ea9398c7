"""wildboar: an inbound SMTP server that hands every accepted message durably to AMQP
and/or LMTP, and never says 250 before the message is safe."""

__version__ = "0.1.0"
