"""Provider adapters, one module per kind of push, and the registry that names them.

Adding a provider is adding one module beside these and one line in `PROVIDERS`, then
`make schemas` to write the schema files' parts that name the providers.
The contract every module meets (`Provider`) and what the ingress and the workers need
of it (outcomes, answers, errors) are importable from here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from schemas.providers import (
    huawei_aicc_release,
    nxcloud_call_center_report,
    nxcloud_voice_dr,
    nxcloud_voice_report,
)
from schemas.providers.answers import HTTP_STATUS, Answer, Outcome
from schemas.providers.errors import Reason, Reject, Unauthenticated
from schemas.providers.protocol import Provider, SimulatedCallback
from schemas.source_settings import ProviderConfig

__all__ = [
    "HTTP_STATUS",
    "PROVIDERS",
    "Answer",
    "Outcome",
    "Provider",
    "ProviderConfig",
    "Reason",
    "Registry",
    "Reject",
    "SimulatedCallback",
    "Unauthenticated",
    "default_registry",
]


class Registry(Mapping[str, Provider]):
    def __init__(self, providers: Iterable[Provider]) -> None:
        self._by_name: dict[str, Provider] = {}
        for provider in providers:
            if provider.name in self._by_name:
                raise ValueError(f"provider {provider.name!r} registered twice")
            self._by_name[provider.name] = provider

    def __getitem__(self, name: str) -> Provider:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


# One line per provider. The order is that of the enums in the schema files.
PROVIDERS: tuple[Provider, ...] = (
    nxcloud_voice_report.PROVIDER,
    nxcloud_call_center_report.PROVIDER,
    nxcloud_voice_dr.PROVIDER,
    huawei_aicc_release.PROVIDER,
)


def default_registry() -> Registry:
    return Registry(PROVIDERS)
