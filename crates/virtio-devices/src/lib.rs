//! virtio-devices
