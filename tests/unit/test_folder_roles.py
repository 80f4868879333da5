"""Folder roles for servers without SPECIAL-USE come from well-known names."""

from __future__ import annotations

from service.models.message import Folder
from service.protocols.imap.reader import _roles_from_names


def test_roles_from_names_only_where_no_attribute_claims_them() -> None:
    folders = [
        Folder(name="INBOX", delimiter="/", role="inbox"),
        Folder(name="Sent Items", delimiter="/"),
        Folder(name="INBOX/Drafts", delimiter="/"),
        Folder(name="Spam", delimiter="/"),
        Folder(name="Papierkorb", delimiter="/", role="trash"),  # by attribute
        Folder(name="Trash", delimiter="/"),  # trash is taken already
        Folder(name="Projects/Archive", delimiter="/"),  # nested: not a role
        Folder(name="Archive", delimiter="/"),
    ]
    _roles_from_names(folders)
    assert {f.name: f.role for f in folders} == {
        "INBOX": "inbox",
        "Sent Items": "sent",
        "INBOX/Drafts": "drafts",
        "Spam": "junk",
        "Papierkorb": "trash",
        "Trash": None,
        "Projects/Archive": None,
        "Archive": "archive",
    }
