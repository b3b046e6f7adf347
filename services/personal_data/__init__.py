"""Members' personal data: profiles sealed per member, erased by destroying the member's key."""
