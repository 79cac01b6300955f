"""MetaQ's ZooKeeper side: the znode layout (``paths``), the kazoo ⇄ trio bridge (``bridge``),
the broker registry (``registry``), and what clients read and write: brokers and topic partitions
(``discovery``), consumer-group membership and owner nodes (``groups``), consumer offsets
(``offsets``), and the balancing strategies every group member computes (``balance``).

This package never imports ``metaq_server`` or ``metaq_client`` (they depend on it, not the other
way round); configuration arrives as plain values or duck-typed objects.
"""
