"""The embedded serving stack as commands (`cm3leon stack up|demo`): starts `services.stack`'s processes with a
model directory, builds the demo retrieval memory with the core, and runs the stack demo.

Outside `services` because it uses the model core (retrieval memory, shapes-world requests): the gateway side
(`services`) stays free of torch, and this package may import the core, the services and the client.
"""
