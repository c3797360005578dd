from textcam.cli import main

main()
