//! The real `spore-relay` binary: init, run, SIGKILL, restart.
