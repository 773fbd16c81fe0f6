"""MRI/CT plugin: NIfTI/DICOM I/O, degradation, a conditional diffusion super-resolution model, metrics."""
