"""KServe V2 over HTTP/REST (Starlette on uvicorn): JSON and the binary tensor extension.

codec.py: bodies <-> types; responses.py: answers and error statuses; app.py: routes;
protocol.py: connection guards. The server itself is runtime/server/asgi.py.
"""
