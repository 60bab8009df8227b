"""Tables: learning-curve tables (every candidate x seed trained in full) and the replays of search
strategies on them (`augtune replay`). May import `selection`; nothing that runs Ray."""
