-- Device presence (DESIGN.md section 9): when each controller device was last
-- connected, shown by `starmux devices` next to who is online now. Written when
-- its connection ends (as machines' last_seen is); NULL: not seen since this
-- column exists.
ALTER TABLE controllers ADD COLUMN last_seen REAL;
