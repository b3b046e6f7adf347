"""Profiles in clear (only at the HTTP edge), sealed for the log, and masked for ordinary reads."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, model_validator

from schemas.events import EncryptedProfile
from services.personal_data.crypto import open_field, seal_field

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Phone = Annotated[str, StringConstraints(pattern=r"^\+?[0-9]{6,15}$")]
Email = Annotated[
    str, StringConstraints(max_length=254, pattern=r"^[^@\s]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
]


def _past(day: date) -> date:
    if day >= date.today() or day.year < 1900:
        raise ValueError("a birthday is a real date in the past")
    return day


Birthday = Annotated[date, AfterValidator(_past)]


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    phone: Phone | None = None
    email: Email | None = None
    birthday: Birthday | None = None


class ProfilePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    phone: Phone | None = None
    email: Email | None = None
    birthday: Birthday | None = None

    @model_validator(mode="after")
    def _something(self) -> ProfilePatch:
        if not self.model_dump(exclude_none=True):
            raise ValueError("give at least one field to change")
        return self


def fields_of(profile: Profile | ProfilePatch) -> dict[str, str]:
    return {name: str(value) for name, value in profile.model_dump(exclude_none=True).items()}


def seal(key_id: str, data_key: bytes, member_id: str, fields: dict[str, str]) -> EncryptedProfile:
    sealed = {name: seal_field(data_key, member_id, name, value) for name, value in sorted(fields.items())}
    return EncryptedProfile.model_validate({"key_id": key_id, "fields": sealed})


def open_fields(data_key: bytes, member_id: str, sealed: dict[str, str]) -> dict[str, str]:
    return {name: open_field(data_key, member_id, name, value) for name, value in sealed.items()}


def masked(fields: dict[str, Any]) -> dict[str, str]:
    """What ordinary reads show: enough to recognise a member, not to contact or identify one."""
    shown: dict[str, str] = {}
    for name, value in fields.items():
        text = str(value)
        if name == "phone":
            shown[name] = (
                text[:3] + "*" * max(len(text) - 7, 1) + text[-4:] if len(text) > 7 else "*" * len(text)
            )
        elif name == "email":
            local, _, domain = text.partition("@")
            shown[name] = f"{local[:1]}***@{domain}"
        elif name == "name":
            shown[name] = text[:1] + "*" * max(len(text) - 1, 1)
        elif name == "birthday":
            shown[name] = "****-**-**"
    return shown
