"""Units and format versions, defined once for the whole package."""

#: Joules in one kilowatt-hour.
J_PER_KWH = 3.6e6
#: The `run.json` and `state_dict` schema this version writes and reads.
SCHEMA_VERSION = 1
