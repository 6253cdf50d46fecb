"""Reading `docker buildx du --verbose` as buildx 0.13 prints it (buildcache.parse); pruning by id
is tested against the engine (tests/engine/test_engine.py)."""

from __future__ import annotations

from dlenv import buildcache

DU = """ID:		ufw5z07ra6xkbvcomycfni9dg
Parent:		4h7wuapsxe07v8gmrfdchoa4p
Created at:	2026-11-30 13:50:35.723171059 +0000 UTC
Mutable:	false
Reclaimable:	false
Shared:		true
Size:		3.169GB
Description:	mount / from exec /bin/sh -c sh /tmp/fetch.sh "$wheels"
Usage count:	0
Type:		regular

ID:		yggsyvspe5al5jvi7vnfxmb2z
Created at:	2026-11-30 13:49:11.748182715 +0000 UTC
Size:		262.5MB
Description:	[rootfs-amd64 1/1] ADD rootfs.tar /
Type:		regular

ID:		kq0x1lsm3vx1qgmrwkb3bm1a7
Size:		0B
Description:	cached mount /var/cache/apt from exec /bin/sh -c apt-get update
Type:		exec.cachemount

Shared:		1.2GB
Private:	40GB
Reclaimable:	41GB
Total:		41.2GB
"""


def test_records_are_read_with_their_size_kind_and_description():
    found = buildcache.parse(DU)
    assert set(found) == {"ufw5z07ra6xkbvcomycfni9dg", "yggsyvspe5al5jvi7vnfxmb2z", "kq0x1lsm3vx1qgmrwkb3bm1a7"}
    assert found["ufw5z07ra6xkbvcomycfni9dg"].size == 3_169_000_000
    assert found["ufw5z07ra6xkbvcomycfni9dg"].kind == "regular"
    assert found["yggsyvspe5al5jvi7vnfxmb2z"].description == "[rootfs-amd64 1/1] ADD rootfs.tar /"
    assert found["kq0x1lsm3vx1qgmrwkb3bm1a7"].kind == "exec.cachemount"
