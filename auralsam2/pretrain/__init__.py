"""The synthetic demo's pretraining recipes (not part of AuralSAM2): a small SAM2 trained on the
synthetic world the way SAM2 is trained (`sam2`), and a tiny VGGish trained as a sound-event
classifier (`vggish`). Their checkpoints are committed in `auralsam2/assets/`."""
