from mgaki.cli import main

main()
