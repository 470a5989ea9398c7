"""wildboar.worker: the only asyncio code. One process per CPU, each serving the listening
sockets it received from the supervisor with uvloop, one ``Session`` per connection."""
