"""Enrolment, profile changes and erasure in the pure domain; sealing and masking of profiles."""

from __future__ import annotations

import pytest

from schemas.events import MemberEnrolled, PersonalDataErased, ProfileUpdated
from services.ledger.domain.decide import decide
from services.ledger.domain.errors import MemberExists, PersonalDataWasErased, UnknownMember
from services.personal_data import crypto, profiles
from tests.unit import ledger_fixtures as make
from tests.unit.ledger_fixtures import RULES, given


def test_enrolment_opens_a_member_with_a_profile_once() -> None:
    (enrolled,) = decide(given(), make.enrol(), RULES)
    assert isinstance(enrolled, MemberEnrolled)
    assert (enrolled.via, enrolled.tier, enrolled.profile) == ("api", "regular", make.sealed_profile())
    with pytest.raises(MemberExists):
        decide(given(make.enrol()), make.enrol(command_id="enrol-2", name="b3RoZXI="), RULES)


def test_a_member_a_purchase_enrolled_gets_the_profile_as_an_update() -> None:
    (updated,) = decide(given(make.purchase("o-1", 1000)), make.enrol(), RULES)
    assert isinstance(updated, ProfileUpdated)


def test_erasure_is_once_and_final() -> None:
    with pytest.raises(UnknownMember):
        decide(given(), make.erase(), RULES)
    (erased,) = decide(given(make.enrol()), make.erase(actor="key-9"), RULES)
    assert erased == PersonalDataErased(actor="key-9")
    after = given(make.enrol(), make.erase())
    assert decide(after, make.erase(command_id="erase-2"), RULES) == []
    with pytest.raises(PersonalDataWasErased):
        decide(after, make.update_profile(), RULES)
    with pytest.raises(PersonalDataWasErased):
        decide(after, make.enrol(command_id="enrol-again"), RULES)


def test_sealed_fields_open_only_for_their_member_and_field() -> None:
    key = crypto.new_data_key()
    sealed = profiles.seal("dk-1", key, "m-1", {"phone": "13812345678", "name": "Li"})
    assert "13812345678" not in sealed.model_dump_json()
    assert profiles.open_fields(key, "m-1", dict(sealed.fields)) == {"phone": "13812345678", "name": "Li"}
    with pytest.raises(crypto.InvalidKey):
        profiles.open_fields(key, "m-2", dict(sealed.fields))
    with pytest.raises(crypto.InvalidKey):
        crypto.open_field(key, "m-1", "name", sealed.fields["phone"])
    with pytest.raises(crypto.InvalidKey):
        profiles.open_fields(crypto.new_data_key(), "m-1", dict(sealed.fields))


def test_data_keys_unwrap_only_with_their_master_and_member() -> None:
    master, other = crypto.MasterKey.generate("a"), crypto.MasterKey.generate("b")
    assert crypto.MasterKey.parse(master.text()) == master
    key = crypto.new_data_key()
    wrapped = crypto.wrap(master, key, "m-1")
    assert crypto.unwrap(master, wrapped, "m-1") == key
    for wrong_master, member in [(other, "m-1"), (master, "m-2")]:
        with pytest.raises(crypto.InvalidKey):
            crypto.unwrap(wrong_master, wrapped, member)
    with pytest.raises(crypto.InvalidKey):
        crypto.MasterKey.parse("no-colon")


def test_masks_hide_what_identifies_or_reaches_a_member() -> None:
    assert profiles.masked(
        {"name": "张伟", "phone": "13812345678", "email": "zhang.wei@example.cn", "birthday": "1990-05-17"}
    ) == {"name": "张*", "phone": "138****5678", "email": "z***@example.cn", "birthday": "****-**-**"}
