"""Configuration: YAML with positions (``yamlloc``), the chains/regions/records loader
(``chains``), and ``build_state`` (``build``) which start-up, reload and ``filterdns check``
all call, so they cannot disagree."""
