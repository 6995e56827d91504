"""What the relay serves: routes, access (CORS, auth, limits), sockets, static."""
