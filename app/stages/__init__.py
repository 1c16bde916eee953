"""The voice pipeline's stages: one module each, joined by bounded channels.

``vad`` scores frames, ``listen`` takes turns and transcribes them (the sans-IO
:class:`audio.turn_taking.TurnMachine` under a thin trio shell), ``respond`` speaks the
replies. :mod:`app._pipeline` only wires them.
"""
