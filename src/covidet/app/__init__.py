"""The wiring layer: what starts covidet's processes and the servers beside them.

Only ``app`` (and ``cli``) put the packages together:

- :mod:`covidet.app.server`: the whole HTTP server (the API of :mod:`covidet.api.app` with the web
  pages of :mod:`covidet.web` mounted on it);
- :mod:`covidet.app.runner`: ``covidet serve``'s services in one process (HTTP server, DICOM
  receiver, MQTT subscriber, analysis) and their bounded stop; :mod:`covidet.app.signals` the
  SIGINT/SIGTERM handlers it and the demo install;
- :mod:`covidet.app.demo` (with ``demo_accounts``, ``demo_announcer``): ``covidet demo``;
- :mod:`covidet.app.broker`: one private Mosquitto starter (generated configuration, password file,
  ACL, optional TLS), used by ``covidet demo``, the tests and the benchmarks;
- :mod:`covidet.app.postgres`, :mod:`covidet.app.redis_server`: throw-away PostgreSQL and Redis on
  loopback ports, for the tests and the benchmarks;
- :mod:`covidet.app.processes`: free loopback ports, waiting for a listener, stopping a child process.

``covidet.runner`` and ``covidet.demo`` are the old import paths of the runner and the demo.
"""
