"""Curation of fetal ultrasound images: head segmentation, head circumference and gestational age."""
