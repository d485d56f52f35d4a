"""data stage"""
