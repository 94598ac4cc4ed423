from tests.killswitch.conftest import pinned_keys, watcher_for  # noqa: F401 (fixtures)
