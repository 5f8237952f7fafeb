"""The shipped scenario catalog: one YAML file per family, each a list of scenario specs."""
