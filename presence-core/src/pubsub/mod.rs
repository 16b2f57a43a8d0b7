//! Publish/subscribe between tasks and between nodes.
