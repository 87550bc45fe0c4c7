"""Energy: meters (nvml, rapl, model, none) that produce an ``EnergyTimeline`` (cumulative joules per device on
the run clock), and attribution of its energy to steps and requests (DESIGN.md "Key types", "Energy measurement
notes").

- ``replay.energy.timeline``: ``EnergyTimeline`` (windows by linear interpolation, power, ``power.csv``).
- ``replay.energy.meters``: the ``Meter`` protocol, ``METERS`` by name, ``choose_meter`` (``--meter auto``),
  ``measure_idle``, ``model_timeline``.
- ``replay.energy.attribution``: step energies from the timeline, split over requests by tokens or FLOPs.
"""
