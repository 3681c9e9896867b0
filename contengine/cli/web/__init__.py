"""`contengine serve`: a live web dashboard over any contengine database.

server: the HTTP server, its token and routes; pages: the HTML it serves; actions: what
its buttons do (signal, cancel, retry, fork); assets: its style and script.
"""
