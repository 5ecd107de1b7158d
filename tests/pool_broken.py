"""A module that fails as it is imported, as a user's agent module might."""

raise RuntimeError("the settings file is missing")
