//! One integration test binary for the whole network (links once).
