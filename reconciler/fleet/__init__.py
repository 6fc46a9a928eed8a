"""Fleet coordination: the FleetLock reboot-slot server on etcd (``server``, ``store``)."""
