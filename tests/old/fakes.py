"""Stand-ins for the registry and git, shared by the unit tests."""

import datetime

from conftest import load_tool

db = load_tool()

UTC = datetime.timezone.utc
CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


class FakeRegistry(db.Registry):
    """A Registry whose look-ups come from `infos` (an ImageInfo serves
    every platform), recorded in `calls`; what is prefetched is recorded
    in `prefetched`."""

    def __init__(self, infos=None):
        super().__init__({})
        self.infos = infos or {}
        self.calls = []
        self.prefetched = []

    def prefetch(self, wanted):
        """Record what a run would ask for up front; start nothing."""
        self.prefetched.extend(wanted)
        return []

    def lookup(self, reference, platforms):
        self.calls.append(reference)
        if reference in db.UNTAGGED_BASES:
            return super().lookup(reference, platforms)
        assert reference in self.infos, f"unexpected look-up of {reference}"
        found = self.infos[reference]
        if isinstance(found, db.ImageInfo):
            return dict.fromkeys(platforms, found)
        return found


def info(*layers, created=CREATED):
    return db.ImageInfo(created, layers)


class FakeContexts:
    """Stands in for ContextChanges: every build directory last changed at
    `value` (time, reason); the images asked about are in `calls`, those
    asked about up front in `prefetched`."""

    def __init__(self, value=None):
        self.value = value
        self.calls = []
        self.prefetched = []

    def prefetch(self, images):
        self.prefetched.extend(image.name for image in images)
        return []

    def get(self, image):
        self.calls.append(image.name)
        assert self.value is not None, f"unexpected question about {image.name}"
        return self.value

    def close(self):
        pass


def needs_rebuild(target, registry, contexts):
    """The reason check_target gives, alone."""
    return db.check_target(target, registry, contexts)[0]
