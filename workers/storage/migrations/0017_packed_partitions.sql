-- cdrflow schema, version 17: partitions with their columns packed.
--
-- A partition made from now on has its parent's columns in the order that wastes no
-- alignment padding (workers/storage/partition_layout.py): fixed-length columns first,
-- the most strictly aligned first, then the variable-length ones. The parents keep their
-- order. In this step's transaction (migrate.AFTER_STEP, relayout_partitions) each
-- partition that has not ended and holds no row is detached, dropped and made again,
-- under its table's lock: on a new database every partition, on one with rows the months
-- made ahead. No row moves; rows stored before keep their layout until retention drops
-- their month.

SET LOCAL lock_timeout = '10s';
