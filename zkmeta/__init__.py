"""MetaQ's ZooKeeper side: the znode layout (``paths``), the kazoo ⇄ trio bridge (``bridge``) and
the broker registry (``registry``).

This package never imports ``metaq_server`` (the broker depends on it, not the other way round);
configuration arrives as plain values or duck-typed objects.
"""
