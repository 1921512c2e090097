//! HTTP contract cases (filled in next).
