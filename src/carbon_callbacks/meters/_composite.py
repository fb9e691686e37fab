"""Several meters read as one: a GPU meter, a CPU/DRAM meter and a host share give one Measurement."""

from __future__ import annotations

from collections.abc import Sequence

from carbon_callbacks._errors import InvalidInputError
from carbon_callbacks.meters._base import Measurement, Meter, MeterBase, join_methods


class CompositeMeter(MeterBase):
    """Opens and closes the same window on every meter and merges their measurements.

    Energy adds up per component; each component keeps its own method label (joined with `+` when two meters
    report the same component differently); warnings are concatenated; the window's seconds are the longest.

    Args:
        meters: the meters to combine, read in this order at both window edges.

    Raises:
        InvalidInputError: when `meters` is empty.
    """

    def __init__(self, meters: Sequence[Meter]) -> None:
        super().__init__()
        self.meters = tuple(meters)
        if not self.meters:
            raise InvalidInputError("meters must hold at least one meter, got none.")
        self.notes = [note for meter in self.meters for note in meter.notes]

    def _read(self) -> dict[str, float]:  # pragma: no cover - windows are delegated
        raise NotImplementedError

    def _component(self, device: str) -> str:  # pragma: no cover - windows are delegated
        raise NotImplementedError

    def _method(self, device: str) -> str:  # pragma: no cover - windows are delegated
        raise NotImplementedError

    @property
    def reads_may_block(self) -> bool:
        """Whether any of the meters' readings can hang."""
        return any(getattr(meter, "reads_may_block", True) for meter in self.meters)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(d for meter in self.meters for d in meter.devices)

    def begin_window(self, key: str) -> None:
        for meter in self.meters:
            meter.begin_window(key)

    def end_window(self, key: str) -> Measurement:
        parts = [meter.end_window(key) for meter in self.meters]
        energy: dict[str, float] = {}
        methods: dict[str, str] = {}
        devices: dict[str, float] = {}
        warnings: list[str] = []
        for part in parts:
            for component, joules in part.energy_j.items():
                energy[component] = energy.get(component, 0.0) + joules
                method = part.methods[component]
                known = methods.get(component)
                if known is None:
                    methods[component] = method
                elif method != known:
                    methods[component] = join_methods(known, method)
            devices.update(part.devices)
            warnings.extend(part.warnings)
        return Measurement(
            seconds=max(part.seconds for part in parts),
            energy_j=energy,
            methods=methods,
            devices=devices,
            warnings=tuple(warnings),
        )

    def close(self) -> None:
        for meter in self.meters:
            meter.close()
