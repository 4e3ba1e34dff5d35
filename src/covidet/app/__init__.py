"""The wiring layer: what starts covidet's processes and the servers beside them.

Only ``app`` (and ``cli``) put the packages together. Here so far:

- :mod:`covidet.app.server`: the whole HTTP server (the API of :mod:`covidet.api.app` with the web
  pages of :mod:`covidet.web` mounted on it), which ``covidet serve`` runs;
- :mod:`covidet.app.processes`: free loopback ports, waiting for a listener, stopping a child process;
- :mod:`covidet.app.broker`: one private Mosquitto starter (generated configuration, password file,
  ACL, optional TLS), used by ``covidet demo``, the tests and the benchmarks;
- :mod:`covidet.app.postgres`: a throw-away PostgreSQL cluster on a loopback port, for the tests and
  the benchmarks.
"""
