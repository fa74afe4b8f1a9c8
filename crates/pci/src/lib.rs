//! PCI root complex: config space access, BAR allocation, MSI-X.
